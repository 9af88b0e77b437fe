"""``conversenet serve``: a local web app (Gradio) over the package's restoration models.

* :mod:`conversenet.web.engine` does the work and has no web dependency: reading the
  uploads, checking them (size, kernel, weights) before any model runs, restoring with
  :func:`conversenet.restore.restore_array`, writing the result in the input's format and
  bit depth, PSNR/SSIM against a clean reference, and Figure 2 for a Converse2d layer.
* :mod:`conversenet.web.app` builds the page with Gradio (``pip install 'conversenet[web]'``)
  and is imported only by the ``serve`` command, never by ``import conversenet``.
"""
