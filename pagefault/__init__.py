"""pagefault: the whole life of a Linux page fault, live, with every number explained."""

__version__ = "0.1.0"
