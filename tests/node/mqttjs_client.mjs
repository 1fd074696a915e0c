// One MQTT.js client, driven by tests/test_mqttjs.py: commands in on stdin, what it sees out on stdout.
//
//   node mqttjs_client.mjs --url ws://127.0.0.1:PORT/mqtt --protocol-version 5 [--username KEY]
//
// The key's secret is never an argument (a command line is readable by every user of the machine):
// it comes from the file named by --secret-file, or else from the RADIO_SECRET environment variable.
// Without either, the client connects with no password.
//
// Each line in is one JSON command:
//   {"subscribe": "networks/A/#", "qos": 1}
//   {"publish": "networks/A", "payload": "{\"n\": 1}", "qos": 1, "retain": false}
//   {"end": true}
// Each line out is one JSON event, as the broker's packets reached MQTT.js:
//   {"event": "connack", "code": 0}          the CONNACK's return code (3.1.1) or reason code (5)
//   {"event": "suback", "granted": [1]}      a SUBACK's codes, one per filter
//   {"event": "puback", "code": 0}           a PUBACK's reason code (0 where 3.1.1 has none)
//   {"event": "message", "topic": ..., "payload": ..., "retain": false, "qos": 1}
//   {"event": "disconnect", "code": 142}     a DISCONNECT the broker sent (MQTT 5)
//   {"event": "error", "message": ..., "code": ...}
//   {"event": "close"}                       the connection is gone
// and {"event": "ended"} once {"end": true} has closed the connection cleanly; the process then exits.

import { readFileSync } from "node:fs";
import { createInterface } from "node:readline";
import { parseArgs } from "node:util";
import mqtt from "mqtt";

const { values: args } = parseArgs({
  options: {
    url: { type: "string" },
    "protocol-version": { type: "string", default: "4" },
    username: { type: "string" },
    "secret-file": { type: "string" },
  },
});

function say(event) {
  process.stdout.write(JSON.stringify(event) + "\n");
}

function secret() {
  if (args["secret-file"] !== undefined) {
    return readFileSync(args["secret-file"], "utf8").trim();
  }
  return process.env.RADIO_SECRET;
}

const options = {
  protocolVersion: Number(args["protocol-version"]),
  // Each refusal and each drop is an event the test asserts on: never hidden by a reconnection.
  reconnectPeriod: 0,
  connectTimeout: 10_000,
};
if (args.username !== undefined) {
  options.username = args.username;
  const password = secret();
  if (password !== undefined) {
    options.password = password;
  }
}

const client = mqtt.connect(args.url, options);

client.on("packetreceive", (packet) => {
  switch (packet.cmd) {
    case "connack":
      say({ event: "connack", code: packet.reasonCode ?? packet.returnCode });
      break;
    case "suback":
      say({ event: "suback", granted: packet.granted });
      break;
    case "puback":
      say({ event: "puback", code: packet.reasonCode ?? 0 });
      break;
    case "disconnect":
      say({ event: "disconnect", code: packet.reasonCode ?? 0 });
      break;
    default:
      break;
  }
});
client.on("message", (topic, payload, packet) => {
  say({ event: "message", topic, payload: payload.toString("utf8"), retain: packet.retain, qos: packet.qos });
});
client.on("error", (error) => {
  say({ event: "error", message: error.message, code: error.code ?? null });
});
client.on("close", () => say({ event: "close" }));

// A refused SUBSCRIBE or PUBLISH is reported by its acknowledgement above; the callbacks' errors
// repeat it, so they are not printed again.
const ignore = () => {};

const commands = createInterface({ input: process.stdin });
commands.on("line", (line) => {
  const command = JSON.parse(line);
  if (command.subscribe !== undefined) {
    client.subscribe(command.subscribe, { qos: command.qos ?? 0 }, ignore);
  } else if (command.publish !== undefined) {
    client.publish(
      command.publish,
      command.payload ?? "",
      { qos: command.qos ?? 0, retain: command.retain ?? false },
      ignore,
    );
  } else if (command.end !== undefined) {
    client.end(false, () => {
      say({ event: "ended" });
      process.exit(0);
    });
  }
});
// The test went away without saying goodbye: go too.
commands.on("close", () => client.end(true, () => process.exit(0)));
