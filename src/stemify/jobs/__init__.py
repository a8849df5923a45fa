"""Jobs: the durable record of every separation request and the code that runs them."""
