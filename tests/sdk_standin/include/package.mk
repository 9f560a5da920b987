# Stand-in for the SDK's package.mk (tests only): BuildPackage evaluates the
# package's definition as the SDK does and prints what it found; the build
# recipes are printed for the test to run.
all:
	@:

define BuildPackage
$(eval TITLE:=)
$(eval DEPENDS:=)
$(eval PKGARCH:=)
$(eval SECTION:=)
$(eval $(Package/$(1)))
$(info @@package $(1))
$(info @@field TITLE $(TITLE))
$(info @@field DEPENDS $(DEPENDS))
$(info @@field PKGARCH $(PKGARCH))
$(info @@field SECTION $(SECTION))
$(info @@field conffiles $(strip $(Package/$(1)/conffiles)))
$(info @@field description $(if $(Package/$(1)/description),yes,no))
$(info @@field postinst $(if $(Package/$(1)/postinst),yes,no))
$(info @@field prerm $(if $(Package/$(1)/prerm),yes,no))
$(info @@end)
endef
