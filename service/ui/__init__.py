"""The web page at ``/ui/``: static assets shipped in the package, no build step."""
