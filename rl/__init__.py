"""Rewards, Q-learning heads, d3rlpy bridge, bandits and off-policy evaluation."""
