"""Data generators: the traffic simulator, sensor agents, the legacy HTTP generator.

Pure clients of the platform: they import nothing server-side. Not built yet; see README.md.
"""
