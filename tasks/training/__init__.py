"""Training one stage: in this process (run), under accelerate launch (launch), and its subprocess entry (entry)."""
