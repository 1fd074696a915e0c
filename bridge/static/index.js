// The index page: with a key in this tab's session storage, list the key's networks too.
"use strict";
(function () {
  const STORE = "radio-key";
  const list = document.getElementById("networks");
  const form = document.getElementById("key-form");
  const input = document.getElementById("key");
  const error = document.getElementById("key-error");

  function render(networks) {
    list.replaceChildren();
    if (networks.length === 0) {
      const li = document.createElement("li");
      li.className = "none";
      li.textContent = "No network you may read.";
      list.append(li);
    }
    for (const network of networks) {
      const li = document.createElement("li");
      const a = document.createElement("a");
      a.href = "networks/" + encodeURIComponent(network.name);
      a.textContent = network.name;
      li.append(a);
      if (!network.public) {
        const tag = document.createElement("span");
        tag.className = "tag";
        tag.textContent = "private";
        li.append(" ", tag);
      }
      list.append(li);
    }
  }

  async function refresh() {
    const key = sessionStorage.getItem(STORE);
    const headers = key ? { "API-KEY": key } : {};
    const response = await fetch("networks", { headers });
    const body = await response.json();
    if (!response.ok) {
      error.textContent = body.error || "refused";
      sessionStorage.removeItem(STORE);
      return;
    }
    error.textContent = "";
    render(body.networks);
  }

  form.addEventListener("submit", (event) => {
    event.preventDefault();
    if (input.value) sessionStorage.setItem(STORE, input.value.trim());
    input.value = "";
    refresh();
  });
  document.getElementById("forget").addEventListener("click", () => {
    sessionStorage.removeItem(STORE);
    refresh();
  });
  if (sessionStorage.getItem(STORE)) refresh();
})();
