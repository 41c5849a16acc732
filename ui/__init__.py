"""The stylelora web UI (Gradio). Run it with `stylelora ui`."""
