"""``feredge run``, the always-on service, and everything only it needs: its TOML config, sinks
(JSON lines, MQTT, HTTP), metrics, timeline, fleet identity, sd_notify and the status page.

The runtime core (``feredge.edge``: contract, preprocess, model, detect, track, pipeline, sources)
never imports from here.
"""
