#!/bin/sh
# A live queue: the scheduler runs whatever is appended to gpu.queue, as soon as
# a GPU is free, until you stop it with Ctrl-C (which lets running jobs finish).
#
#   terminal 1:  sh examples/queue.sh
#   terminal 2:  echo 'echo "hello from GPU $CUDA_VISIBLE_DEVICES"; sleep 2' >> gpu.queue
#
# --queue-file follows the file by name, also when an editor or `sed -i`
# replaces it, and never runs a line twice. (`tail -F -n 0 gpu.queue |
# simple_gpu_scheduler ...` also follows the name, but reads a replaced file
# again from its first line, so its commands would run again; plain
# `tail -f` loses the file when it is replaced.)
touch gpu.queue
simple_gpu_scheduler --gpus 0,1 --joblog gpu.joblog --queue-file gpu.queue
