#!/bin/bash
# An H200 call planned 2026-12-05 (session BD; about 250 s): the LayerNorm backward's loads a step ahead timed on an
# H200 (ln_check's sweep times both settings; its checks include the bitwise one), then the strided pattern beside
# the fixed one at 3,072 and 12,288 tokens (on an H100 in call BD2: -5.0% and -9.9%).
PARTS="ln" bash docs/runs/fortyfirst/callAW1.sh
PARTS="short" bash docs/runs/fortyfourth/callBC6.sh
