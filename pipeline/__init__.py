__all__: list[str] = []  # the modules are the API: import them by name
