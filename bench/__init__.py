"""Quality and speed checks of the whole product, run from outside through the API."""
