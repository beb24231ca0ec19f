"""tmrender: lip-synced talking-head video from one portrait and an audio file of any length."""

__version__ = "0.1.0"
