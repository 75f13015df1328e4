"""Public chest X-ray data sets read as they ship, found by their files.

``--data <folder>`` is read by the first rule that applies: a ``manifest.csv`` (or a
``.csv`` given directly) is a manifest; otherwise the folder is recognised by the
files each public data set ships with:

=============  =================================================  ==============
format         recognised by                                      labels
=============  =================================================  ==============
``nih``        ``Data_Entry_2017*.csv``                           multi-label
``chexpert``   ``train.csv`` and ``valid.csv`` (CheXpert header)  multi-label
``mimic``      ``mimic-cxr-2.0.0-chexpert.csv[.gz]``              multi-label
``rsna``       ``stage_2_train_labels.csv`` (or ``stage_1_…``)    multi-label
``covidqu``    ``Infection Segmentation Data`` / ``Lung …`` or    single-label
               ``Train|Val|Test/<class>/images/``
=============  =================================================  ==============

Anything else is a folder of class subfolders. Each reader returns the rows a manifest
would give (image path relative to the root, labels joined by ``|``, split, no file
hash, mask) and says in :attr:`Reader.describe` what it did (views kept, label policy,
how splits were made), which ``baseline`` prints.
"""

from __future__ import annotations

from pathlib import Path

from drift_gate.data import chexpert, covidqu, nih, rsna
from drift_gate.data.formats import Reader
from drift_gate.errors import DataError

__all__ = ["READERS", "detect"]

#: every public data set's reader, in the order ``detect`` tries them
READERS: tuple[Reader, ...] = (nih.READER, chexpert.CHEXPERT, chexpert.MIMIC, rsna.READER, covidqu.READER)


def detect(root: Path) -> Reader | None:
    """The public data set whose layout ``root`` has, if any.

    Raises:
        DataError: the folder looks like two data sets at once.
    """
    root = Path(root)
    if not root.is_dir():
        return None
    found = [r for r in READERS if r.detect(root)]
    if len(found) > 1:
        raise DataError(
            f"{root}: holds the files of several data sets ({', '.join(r.title for r in found)}); "
            "give each its own folder"
        )
    return found[0] if found else None
