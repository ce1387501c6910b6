"""Developer tools that are not part of the runtime (tiny test models)."""
