"""Examples of regctl in use, each tested by the suite."""
