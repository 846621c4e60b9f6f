"""What people run: the command line (a table of commands over training_commands and service_commands), the worker
process, doctor, the one-machine runner and the feedback report. Nothing imports these but each other."""
