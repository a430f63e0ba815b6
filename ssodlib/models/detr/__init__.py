"""Parts shared by the detection-transformer families (``models/detectors/deformable_detr.py`` and
``models/detectors/dino.py``), in plain PyTorch without compiled operators:

* :mod:`~ssodlib.models.detr.attention`: multi-scale deformable attention (Deformable DETR, Zhu et al.,
  ICLR 2021, https://arxiv.org/abs/2010.04159, Eq. 2-3) written with ``grid_sample``;
* :mod:`~ssodlib.models.detr.transformer`: positional encodings, the deformable encoder and decoder;
* :mod:`~ssodlib.models.detr.boxes`: normalised ``cxcywh`` against pixel ``xyxy`` of the unpadded image;
* :mod:`~ssodlib.models.detr.matcher`: Hungarian one-to-one matching and the one-to-many interface;
* :mod:`~ssodlib.models.detr.losses`: focal, L1 and GIoU set losses;
* :mod:`~ssodlib.models.detr.denoising`: DINO's contrastive denoising queries and group attention masks;
* :mod:`~ssodlib.models.detr.trunk` and :mod:`~ssodlib.models.detr.detector`: the backbone levels and
  the model both families share (features, encoder memory, decoder on any queries, prediction).
"""
