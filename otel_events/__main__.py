from otel_events.cli import app

app()
