"""Keras models: ResNet encoders, depth decoder, pose network and the trainable depth models."""
