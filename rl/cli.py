"""The help formatter of coderl's commands."""
import argparse


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows each option's default, except None: a required option has none, and an optional one's help
    says what leaving it out means ("(default: the config's length)"), which "(default: None)" contradicted."""

    def _get_help_string(self, action):
        return action.help if action.default is None else super()._get_help_string(action)
