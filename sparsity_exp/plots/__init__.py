"""Figure functions. They read the metrics table (a pandas DataFrame) and saved arrays only."""
