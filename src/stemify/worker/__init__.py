"""Workers: the queue transport and the code that runs a job end to end."""
