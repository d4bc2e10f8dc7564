#!/bin/sh
# A hyperparameter sweep: simple_hypersearch prints one command per grid point
# (shuffled, reproducible with --seed) and the scheduler runs them, one per GPU.
# `echo` stands in for `python train.py`, so this runs on a machine without GPUs.
simple_hypersearch 'echo "lr={lr} batch={bs} on GPU $CUDA_VISIBLE_DEVICES"; sleep 0.5' \
    -p lr 0.001 0.0005 0.0001 -p bs 32 64 --seed 1 \
  | simple_gpu_scheduler --gpus 0,1,2 --tag
