"""Burn's agents: the offline Messages API fake, personas, tools, context rendering, LLM adapter."""
