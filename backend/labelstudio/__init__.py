"""The Label Studio adapter: the HTTP protocol (app), and Label Studio I/O (API access, media, label
configs, region formats, annotations)."""
