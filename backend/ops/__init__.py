"""What people run: the command line, doctor, the one-machine runner and the feedback report. Nothing imports
these but each other."""
