"""Predicting, for one image and for a batch: the three stages of an image, load, infer and
write (:mod:`.stages`); a batch's jobs (:mod:`.jobs`); the runner that orders, overlaps and
retries the stages and shares the jobs over torchrun ranks (:mod:`.runner`); the crash-safe
output folder (:mod:`.folder`) and the summary rows (:mod:`.rows`). Import the modules
themselves: this package file imports nothing."""
