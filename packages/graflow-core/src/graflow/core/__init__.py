"""The engine: tasks, graphs, contexts, scheduling, handlers and policies."""
