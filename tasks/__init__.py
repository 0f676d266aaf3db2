"""Data: tiny Shakespeare statistics, the triggered-bigram task, Zipf association data."""
