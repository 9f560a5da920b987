# Stand-in for python3-package.mk (tests only): Py3Package prints the
# build recipes, the filespec and the install recipe of a package.
PYTHON3_PKG_DIR:=/usr/lib/python3.11/site-packages

define Py3Package
$(info @@py3package $(1))
$(info @@recipe prepare)
$(info $(Build/Prepare))
$(info @@recipe compile)
$(info $(Build/Compile))
$(info @@filespec)
$(info $(Py3Package/$(1)/filespec))
$(info @@recipe install)
$(info $(call Py3Package/$(1)/install,$(STANDIN_TMP)/root-$(1)))
$(info @@end)
endef
