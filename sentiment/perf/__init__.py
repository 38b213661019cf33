"""Performance: the side-by-side benchmark, the load test and the backend comparison."""
