"""A stateful GitHub emulator over real HTTP (see docs/github-emulator.md)."""

from localenv.github.server import GitHubEmulator

__all__ = ["GitHubEmulator"]
