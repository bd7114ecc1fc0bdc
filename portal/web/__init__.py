"""Blueprints by audience: `public` (home, health, connect), `admin`, `api` (the Org API)."""
