"""What talks to, or names, a deployed stage on AWS."""
