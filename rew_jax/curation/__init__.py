"""LLM curation: verify or correct each image's entity, write a rationale and QA → REW records."""
