"""Run presets (YAML), shipped as package data: autoprune.presets."""
