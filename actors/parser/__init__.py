"""The parser actor (actor.py): the vtparse library served per stream."""
