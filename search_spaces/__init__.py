"""Built-in search spaces (YAML), shipped as package data: autoprune.spaces."""
