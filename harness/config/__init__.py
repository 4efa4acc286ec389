"""The suite: a YAML file turned into checked dataclasses, method configs and protocol objects resolved once."""
