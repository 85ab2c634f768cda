"""The plugins that ship with hcibench, registered through the same entry points a third party uses."""
