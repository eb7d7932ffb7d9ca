"""Route modules; each exposes `routes` (an `access.Routes`)."""
