"""Chatbots API: serves LLM chatbots to web and mobile apps through the Chatbots v1 API."""
