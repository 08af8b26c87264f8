"""The OpenAI-compatible speech server (``llamavoice serve``): FastAPI app, continuous-batching
engine, streaming encoders, voice library and the web page. Importing this package does not
import FastAPI: ``llamavoice.server.app`` does."""
