"""The models a server serves: the registry, model control (load, unload, poll), durable
registration into the repository, and the workers of one server agreeing on all of it."""
