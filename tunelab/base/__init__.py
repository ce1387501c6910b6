"""The base layer every plug-in imports: config bases, errors, model loading, prompts."""
