"""The two command-line interfaces and the options they share."""
