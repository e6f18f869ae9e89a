"""History and consumer-state stores."""
