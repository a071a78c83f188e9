"""LlamaIndex's in-memory IngestionPipeline on a directory of small text files: the peer that
benches/small_docs.sh measures ragpipe against (issue #13).

SentenceSplitter(chunk_size=256, chunk_overlap=0) + MockEmbedding(384), one process, no
persistence; the clock runs from reading the first file to the last node embedded.
Prints one JSON line: documents, chunks, seconds, cpu_seconds.
Usage: python benches/small_docs_llamaindex.py DIR
"""

import json
import os
import resource
import sys
import time

from llama_index.core import Document
from llama_index.core.embeddings import MockEmbedding
from llama_index.core.ingestion import IngestionPipeline
from llama_index.core.node_parser import SentenceSplitter


def cpu_seconds():
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def main():
    directory = sys.argv[1]
    names = sorted(os.listdir(directory))
    pipeline = IngestionPipeline(
        transformations=[SentenceSplitter(chunk_size=256, chunk_overlap=0), MockEmbedding(embed_dim=384)]
    )
    # Warm the tokenizer outside the clock, as ragpipe's worker is started before its clock.
    pipeline.run(documents=[Document(text="warm up")])
    cpu0, t0 = cpu_seconds(), time.perf_counter()
    documents = []
    for name in names:
        with open(os.path.join(directory, name), encoding="utf-8") as f:
            documents.append(Document(text=f.read(), metadata={"file_name": name}))
    nodes = pipeline.run(documents=documents)
    seconds, cpu = time.perf_counter() - t0, cpu_seconds() - cpu0
    print(json.dumps({"documents": len(documents), "chunks": len(nodes), "seconds": seconds, "cpu_seconds": cpu}))


if __name__ == "__main__":
    main()
