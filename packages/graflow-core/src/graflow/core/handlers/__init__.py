"""Task handlers shipped with core (``direct``) and the group policies."""
